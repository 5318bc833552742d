"""Figures of the paper's ideas: what the notebooks draw.

* :mod:`~dgmn_ref.figures.plotting`: the explanatory figures of notebooks 00-07 (the
  pipeline of Figure 3, neighbourhoods, bilinear sampling, walks, kernels, scaling);
* :mod:`~dgmn_ref.figures.viz`: what a trained DGMN layer does, and the interactive
  explorer of notebook 08.
"""
