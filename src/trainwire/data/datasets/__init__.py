"""The bundled data files (digits, diabetes, the digits feature network), read through ``importlib.resources``; sources and licences in README.md."""
