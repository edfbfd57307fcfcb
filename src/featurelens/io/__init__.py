"""Reading and writing gene sets and dictionaries."""
