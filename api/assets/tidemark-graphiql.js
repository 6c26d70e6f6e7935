// Starts GraphiQL on the page the Tidemark server serves at `/`. Everything it needs was
// loaded from the same origin (React, ReactDOM and GraphiQL are vendored in the binary), and
// the page's Content-Security-Policy allows no other origin, so this file is a script of its
// own rather than an inline one.
//
// The endpoints come from the page (data attributes), relative to it, so the page also works
// behind a reverse proxy that serves it under a path prefix. `?query=` and `?variables=` in the
// page's URL fill the editors, and editing updates them, so a query can be shared as a link.
(function () {
  'use strict';

  var root = document.getElementById('graphiql');

  function endpoint(path, websocket) {
    var url = new URL(path, window.location.href);
    if (websocket) {
      url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    }
    return url.toString();
  }

  var params = new URLSearchParams(window.location.search);

  function remember(name) {
    return function (value) {
      if (value) {
        params.set(name, value);
      } else {
        params.delete(name);
      }
      var search = params.toString();
      window.history.replaceState(null, '', search ? '?' + search : window.location.pathname);
    };
  }

  var fetcher = GraphiQL.createFetcher({
    url: endpoint(root.dataset.endpoint, false),
    subscriptionUrl: endpoint(root.dataset.subscriptionEndpoint, true),
  });

  ReactDOM.createRoot(root).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      query: params.get('query') || undefined,
      variables: params.get('variables') || undefined,
      onEditQuery: remember('query'),
      onEditVariables: remember('variables'),
      defaultEditorToolsVisibility: true,
    })
  );
})();
