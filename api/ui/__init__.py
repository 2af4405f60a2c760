"""The operator pages (`/ui`): server-rendered, no build step; their own login (`auth`)."""
