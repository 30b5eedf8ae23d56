from kotc_cli.main import main

main()
