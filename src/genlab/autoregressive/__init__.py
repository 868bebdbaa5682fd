"""Autoregressive models: next-token prediction for text (the small GPT) and for pixels (the pixel GPT), and the decoding loop and sampling filters they share."""
