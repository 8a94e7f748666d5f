from layover.cli import main

main()
