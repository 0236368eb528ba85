"""The four stages: curate → synthesize → evaluate → instantiate."""
