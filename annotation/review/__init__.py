"""Expert review: campaigns, handing out comparisons, the comparison screen and the votes."""
