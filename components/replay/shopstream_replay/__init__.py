"""`invoke replay`: historical records through the API's validation and publishing, each stored once."""
