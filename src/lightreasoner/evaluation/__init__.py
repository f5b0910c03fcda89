"""Zero-shot evaluation on math benchmarks, graded like the Qwen2.5-Math toolkit."""
