"""Host-side Flower pieces for testing appliances: a real SuperLink."""
