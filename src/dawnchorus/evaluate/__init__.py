"""Scoring: BirdCLEF 2022/2023/2024-25 metrics and threshold tuning."""
