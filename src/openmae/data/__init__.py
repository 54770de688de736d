"""Datasets, transforms and resumable loaders."""
