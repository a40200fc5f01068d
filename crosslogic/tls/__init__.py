"""TLS for the gateway: the control plane's CA (``ca``), the certificates it issues
(``issue``), the listener's certificate files (``listener``) and the client certificate that
Envoy presents to mTLS nodes (``client``)."""
