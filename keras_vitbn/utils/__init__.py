"""Small helpers every layer of the package may use: files, progress lines, command errors, machine facts.

Nothing here imports Keras models, data or training: these modules sit at the bottom of the package.
"""
