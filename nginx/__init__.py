"""nginx configuration of the balancer: `nginx.render.render(settings)` and `render_status(settings)`.

(No re-exports here: `nginx.render` must stay the module, not the function.)
"""
