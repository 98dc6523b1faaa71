throw new Error('@napi-rs/wasm-tools is stubbed out in engram (package.json overrides); install the real package to use this napi feature');
