"""Files in and out: audio decoding and streaming, annotation tables, prediction outputs. No torch."""
