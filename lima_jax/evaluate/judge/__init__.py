"""The judge: one protocol, two implementations (an OpenAI-compatible endpoint, a local checkpoint),
the judging prompts, the judgment cache and the runner that asks what the cache lacks."""
