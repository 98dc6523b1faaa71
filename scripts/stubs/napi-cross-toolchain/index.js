throw new Error('@napi-rs/cross-toolchain is stubbed out in engram (package.json overrides); install the real package to use this napi feature');
