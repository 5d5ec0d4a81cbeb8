"""Test support: real servers on free loopback ports, image and checkpoint factories."""
