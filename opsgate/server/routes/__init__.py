"""One router per area; each reads the ServerContext from `request.app.state.ctx`."""
