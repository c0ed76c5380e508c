"""Agreement: judge vs experts and experts vs experts, the figures and the staff dashboard that shows them."""
