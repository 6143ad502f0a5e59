"""Pretrained bird-sound backbones (the zoo): the EmbeddingModel interface and pooling (base.py), a
registry by name (registry.py: ``create_embedding_model("birdnet")``), and the entries birdnet.py
(BirdNET 2.4) and perch.py (Perch 2.0). Running a backbone over long recordings is
:mod:`dawnchorus.inference.embeddings`'; nothing here reads audio files."""
