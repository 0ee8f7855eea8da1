import { defineConfig } from "vite";

// Served by obleth under /ui/ from dashboard/dist; nothing is fetched from
// the network at run time.
export default defineConfig({
  base: "/ui/",
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, assetsInlineLimit: 0 },
});
