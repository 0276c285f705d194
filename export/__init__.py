"""The SavedModel export command and its TensorFlow-only verification."""
