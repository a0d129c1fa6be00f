"""Raw datasets in their original layouts -> shards."""
