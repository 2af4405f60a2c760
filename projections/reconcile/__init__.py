"""Orders whose callback never came: a worklist derived from the log, and the worker that
queries WeChat Pay for them and records the answers as evidence."""
