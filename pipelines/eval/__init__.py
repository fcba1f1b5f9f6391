"""``mmrag eval``: retrieval (BEIR), speech recognition, caption retrieval and answers, with results
files that compare run to run."""
