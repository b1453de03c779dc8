from sketchkit.cli import main

main()
