"""Federated data: the population's arrays and per-client rows
(`federated`, `client_indices`), partitions and their reports, client
sampling, augmentation, and the dataset loaders (`datasets`)."""
