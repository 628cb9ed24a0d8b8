(function () {
  var body = document.querySelector("#latents tbody");
  var rows = Array.prototype.slice.call(body.rows);
  var descending = {};
  document.getElementById("tools").hidden = false;
  document.getElementById("search").addEventListener("input", function (event) {
    var query = event.target.value.trim().toLowerCase();
    rows.forEach(function (row) {
      row.hidden = query !== "" && row.dataset.tokens.indexOf(query) < 0;
    });
  });
  document.querySelectorAll("button[data-sort]").forEach(function (button) {
    button.addEventListener("click", function () {
      var key = button.dataset.sort;
      var sign = descending[key] ? 1 : -1;
      descending[key] = !descending[key];
      rows.sort(function (a, b) {
        return sign * (parseFloat(a.dataset[key]) - parseFloat(b.dataset[key]));
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
})();
