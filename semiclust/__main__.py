from semiclust.cli import main

main()
