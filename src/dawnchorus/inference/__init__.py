"""Prediction over long recordings: windows, engines, the shared pipeline, local and Dask runners, export.

The step is ``predict``; the package is named ``inference`` so that ``dawnchorus.predict()`` stays a
function (importing a subpackage ``dawnchorus.predict`` would replace it on the package).
"""
