from trainwire.cli import main

main()
