from posterkg.cli import main

main()
