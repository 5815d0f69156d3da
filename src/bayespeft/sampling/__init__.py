"""Generation under the posterior: sample answers into stores, manage the stores, score the samples."""
