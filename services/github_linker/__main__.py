from services.github_linker.app import main

main()
