document.getElementById('failed').hidden = !new URLSearchParams(location.search).has('failed');
