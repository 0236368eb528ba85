"""The preference data out: the tap that writes it to files (`follow`), its formats, shards and
dataset card, the supersede rules, and the dataset API a trainer reads (`dataset`)."""
