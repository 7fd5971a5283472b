"""An inference web page and JSON API for a saved model, on any Keras backend.

    python -m keras_vitbn.serve runs/mnist/.../model_best.keras    # then open http://127.0.0.1:8000
    keras-vitbn-serve model.keras --port 8080 --class-names fashion_mnist

`GET /` is a page where a person draws a digit or drops an image and sees the
top-3 classes and the 28x28 input the model saw; `POST /predict` is the JSON API
(one image or a batch); `GET /health` says whether the model is loaded. The
fields, limits and errors are in docs/serve.md. Needs the `serve` extra
(Starlette and uvicorn): `pip install -e ".[serve]"`.
"""

from keras_vitbn.serve.app import DEFAULT_LIMITS, Predictor, create_app, main, serve_in_thread

__all__ = ["DEFAULT_LIMITS", "Predictor", "create_app", "main", "serve_in_thread"]
