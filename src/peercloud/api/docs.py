"""The Swagger UI page, served with local assets and the API token handed to its requests."""

import html
import json


def docs_html(title: str, token: str) -> str:
    """Swagger UI with local assets; its requests carry the token as the Bearer header."""
    # JSON is valid JavaScript; escaping <, > and & keeps the string from closing the <script>
    js_token = json.dumps(token).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>
const token = {js_token};
window.ui = SwaggerUIBundle({{
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  requestInterceptor: (request) => {{
    if (!request.headers.Authorization) request.headers.Authorization = "Bearer " + token;
    return request;
  }},
}});
</script>
</body>
</html>
"""
