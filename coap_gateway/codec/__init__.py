"""Codec (sans-I/O): what crosses the link, byte for byte."""

from .profile import DEFAULT_PROFILE, Profile, load_profile, profile_names

__all__ = ["DEFAULT_PROFILE", "Profile", "load_profile", "profile_names"]
