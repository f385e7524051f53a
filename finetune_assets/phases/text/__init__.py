"""Text toolkits shared by the data and evaluation wings: reST, HTML, sentences, deterministic sampling."""
