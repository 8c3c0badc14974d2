"""Coverage-guided fuzz harnesses (atheris) for every parser that reads user files; `make fuzz`."""
