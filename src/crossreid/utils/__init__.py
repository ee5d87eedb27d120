"""Small helpers shared across crossreid's subpackages."""
