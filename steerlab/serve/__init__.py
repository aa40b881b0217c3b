"""``steerlab serve``: an OpenAI-compatible server where every request brings its own steering.

``settings`` (limits, key), ``protocol`` (request bodies), ``vectors`` (the served folder), ``kv`` (the decode
batch's KV cache), ``engine`` (the continuous batcher), ``service`` (request to job), ``app`` (the ASGI routes),
``launch`` (build and run), ``replicas`` (Ray Serve). Per-row steering itself is :mod:`steerlab.core.rows`.

Example::

    from steerlab import load_model
    from steerlab.serve.launch import background_server, build_service
    from steerlab.serve.settings import ServeSettings
    model, tok = load_model()
    with background_server(build_service(model, tok, "vectors/", ServeSettings(model_id="smollm2"))) as url:
        print(url)                                   # OpenAI clients: base_url=url + "/v1"
"""
