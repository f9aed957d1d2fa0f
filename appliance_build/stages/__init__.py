"""The stages of an image build, in the order build.py runs them."""
