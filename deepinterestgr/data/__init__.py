"""Raw data -> the two tables every later stage reads: `items` and `interactions`."""
