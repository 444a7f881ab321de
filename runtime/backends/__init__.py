"""Inference backends behind one interface; see `registry` for the name -> import-string map."""
