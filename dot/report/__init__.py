"""Reporting: figures (`plots`), chain animations (`viz`), re-scoring result files
(`score_files`) and DoT-MP accuracy per thought (`per_thought`). Nothing in training or
decoding imports it; the entry scripts call it once their results are written."""
