"""Layer 2, embedding: every image once through a frozen encoder (or a fusion), cached by content, locally or on Ray."""
