"""The controller: hub loop and its pure bookkeeping."""
