from trainwire.cli.main import main

main()
